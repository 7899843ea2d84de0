(module
  (import "rusm" "spawn" (func $spawn (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 16) "nosuch")
  (func (export "run")
    (loop $forever
      (drop (call $spawn (i32.const 16) (i32.const 6)))
      (br $forever))))

(module
  (import "rusm" "spawn" (func $spawn (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello")
  (func (export "run")
    (drop (call $spawn (i32.const 16) (i32.const 5)))))

(module
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "flood line")
  (func (export "run")
    (loop $forever
      (drop (call $log (i32.const 2) (i32.const 16) (i32.const 10)))
      (br $forever))))

(module
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "rusm" "sleep" (func $sleep (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "sleeper started")
  (func (export "run")
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 15)))
    (loop $forever
      (drop (call $sleep (i32.const 50)))
      (br $forever))))

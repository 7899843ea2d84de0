(module
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 17)
  (func (export "run")
    (memory.fill (i32.const 0) (i32.const 97) (i32.const 1048576))
    (drop (call $log (i32.const 2) (i32.const 0) (i32.const 1048576)))))

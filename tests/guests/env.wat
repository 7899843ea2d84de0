(module
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ (param i32 i32) (result i32)))
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "env:")
  (func (export "run")
    ;; count at 0, buffer size at 4; pointers at 1024, strings at 4096
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (drop (call $environ (i32.const 1024) (i32.const 4096)))
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 4)))
    (drop (call $log (i32.const 2) (i32.const 4096) (i32.load (i32.const 4))))))

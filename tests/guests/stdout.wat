(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "raw stdout from a guest\n")
  (func (export "run")
    ;; one iovec at 0: 24 bytes at 100; bytes written at 8
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 24))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))

(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $read (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "in.txt")
  (data (i32.const 120) "out.txt")
  (data (i32.const 140) "../outside.txt")
  (data (i32.const 200) "read: denied")
  (data (i32.const 220) "write: ok")
  (data (i32.const 240) "write: denied")
  (data (i32.const 260) "escape: ok")
  (data (i32.const 280) "escape: denied")
  (data (i32.const 300) "read: ")
  (func $say (param $ptr i32) (param $len i32)
    (drop (call $log (i32.const 2) (local.get $ptr) (local.get $len))))
  (func (export "run")
    ;; read in.txt from the first preopen (fd 3) and log "read: <contents>"
    (if (i32.eqz (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 6)
                   (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0)))
      (then
        ;; iovec at 8: buffer 306.., 64 bytes; nread at 16
        (i32.store (i32.const 8) (i32.const 306))
        (i32.store (i32.const 12) (i32.const 64))
        (drop (call $read (i32.load (i32.const 0)) (i32.const 8) (i32.const 1) (i32.const 16)))
        (call $say (i32.const 300) (i32.add (i32.const 6) (i32.load (i32.const 16)))))
      (else (call $say (i32.const 200) (i32.const 12))))
    ;; create out.txt for writing (O_CREAT, right fd_write)
    (if (i32.eqz (call $open (i32.const 3) (i32.const 0) (i32.const 120) (i32.const 7)
                   (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 0)))
      (then (call $say (i32.const 220) (i32.const 9)))
      (else (call $say (i32.const 240) (i32.const 13))))
    ;; climb out of the preopen
    (if (i32.eqz (call $open (i32.const 3) (i32.const 0) (i32.const 140) (i32.const 14)
                   (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0)))
      (then (call $say (i32.const 260) (i32.const 10)))
      (else (call $say (i32.const 280) (i32.const 14))))))

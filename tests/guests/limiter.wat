;; Spawns one sleeper and logs whether the spawn was refused with LIMIT (-5):
;; the guest side of a worker whose process pool is full.
(module
  (import "rusm" "spawn" (func $spawn (param i32 i32) (result i64)))
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "sleeper")
  (data (i32.const 32) "spawn refused: limit")
  (data (i32.const 64) "spawn was not refused with limit")
  (func (export "run")
    (if (i64.eq (call $spawn (i32.const 16) (i32.const 7)) (i64.const -5))
      (then (drop (call $log (i32.const 2) (i32.const 32) (i32.const 20))))
      (else (drop (call $log (i32.const 2) (i32.const 64) (i32.const 32)))))))

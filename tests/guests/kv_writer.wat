;; The crash-safety writer: a resident that commits transactions forever.
;; Transaction i (one rusm.kv_batch on bucket "crash") sets "a"+i and
;; "b"+i (i as 4 little-endian bytes) to i, and "next" to i + 1; after it
;; returned 0 the guest logs "acked <i>". On start it resumes from "next".
(module
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "rusm" "exit" (func $exit (param i32)))
  (import "rusm" "kv_get" (func $kv_get (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "rusm" "kv_batch" (func $kv_batch (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "crash")
  (data (i32.const 8) "next")
  (data (i32.const 16) "acked ")
  (data (i32.const 48) "batch failed")
  ;; ops at 256: three records of 7-byte header + key + 4-byte value
  (func $op (param $at i32) (param $keylen i32) (result i32)
    (i32.store8 (local.get $at) (i32.const 1))
    (i32.store16 (i32.add (local.get $at) (i32.const 1)) (local.get $keylen))
    (i32.store (i32.add (local.get $at) (i32.const 3)) (i32.const 4))
    (i32.add (local.get $at) (i32.const 7)))
  (func (export "run") (local $i i32) (local $p i32) (local $q i32) (local $v i32)
    (if (i32.eq (call $kv_get (i32.const 0) (i32.const 5) (i32.const 8) (i32.const 4)
                              (i32.const 128) (i32.const 4)) (i32.const 4))
      (then (local.set $i (i32.load (i32.const 128)))))
    (loop $forever
      ;; set a+i = i
      (local.set $p (call $op (i32.const 256) (i32.const 5)))
      (i32.store8 (local.get $p) (i32.const 97))
      (i32.store (i32.add (local.get $p) (i32.const 1)) (local.get $i))
      (i32.store (i32.add (local.get $p) (i32.const 5)) (local.get $i))
      (local.set $p (i32.add (local.get $p) (i32.const 9)))
      ;; set b+i = i
      (local.set $p (call $op (local.get $p) (i32.const 5)))
      (i32.store8 (local.get $p) (i32.const 98))
      (i32.store (i32.add (local.get $p) (i32.const 1)) (local.get $i))
      (i32.store (i32.add (local.get $p) (i32.const 5)) (local.get $i))
      (local.set $p (i32.add (local.get $p) (i32.const 9)))
      ;; set next = i + 1
      (local.set $p (call $op (local.get $p) (i32.const 4)))
      (i32.store (local.get $p) (i32.load (i32.const 8)))
      (i32.store (i32.add (local.get $p) (i32.const 4)) (i32.add (local.get $i) (i32.const 1)))
      (local.set $p (i32.add (local.get $p) (i32.const 8)))
      (if (call $kv_batch (i32.const 0) (i32.const 5) (i32.const 256)
                          (i32.sub (local.get $p) (i32.const 256)))
        (then (drop (call $log (i32.const 0) (i32.const 48) (i32.const 12)))
              (call $exit (i32.const 1))))
      ;; "acked <i>" built at 16: digits after the 6-byte prefix
      (local.set $q (i32.const 40))
      (local.set $v (local.get $i))
      (loop $digits
        (local.set $q (i32.sub (local.get $q) (i32.const 1)))
        (i32.store8 (local.get $q) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
        (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
        (br_if $digits (local.get $v)))
      (memory.copy (i32.const 22) (local.get $q) (i32.sub (i32.const 40) (local.get $q)))
      (drop (call $log (i32.const 2) (i32.const 16)
                       (i32.add (i32.const 6) (i32.sub (i32.const 40) (local.get $q)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $forever))))

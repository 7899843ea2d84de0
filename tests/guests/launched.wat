;; A module launched ad hoc (`rusmctl spawn --module`): its entrypoint
;; `start` takes (utf8, u16, i64, f32, f64, buffer) as (i32, i32, i64, f32,
;; f64, i32), logs `args <host bytes> <port> <big> <ratio*1000> <x*1000>
;; <buffer bytes>`, then logs `inbox <payload>` for every message it
;; receives, forever.
(module
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "args ")
  (data (i32.const 2048) "inbox ")

  ;; Writes `v` in decimal at `p`, then a space; returns the next position.
  (func $num (param $v i64) (param $p i32) (result i32)
    (local $start i32) (local $end i32) (local $tmp i32)
    (if (i64.lt_s (local.get $v) (i64.const 0))
      (then
        (i32.store8 (local.get $p) (i32.const 45))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $v (i64.sub (i64.const 0) (local.get $v)))))
    (local.set $start (local.get $p))
    (loop $digits
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digits (i64.ne (local.get $v) (i64.const 0))))
    (local.set $end (i32.sub (local.get $p) (i32.const 1)))
    (block $done
      (loop $reverse
        (br_if $done (i32.ge_u (local.get $start) (local.get $end)))
        (local.set $tmp (i32.load8_u (local.get $start)))
        (i32.store8 (local.get $start) (i32.load8_u (local.get $end)))
        (i32.store8 (local.get $end) (local.get $tmp))
        (local.set $start (i32.add (local.get $start) (i32.const 1)))
        (local.set $end (i32.sub (local.get $end) (i32.const 1)))
        (br $reverse)))
    (i32.store8 (local.get $p) (i32.const 32))
    (i32.add (local.get $p) (i32.const 1)))

  (func (export "start")
    (param $host i32) (param $port i32) (param $big i64) (param $ratio f32) (param $x f64)
    (param $buffer i32)
    (local $p i32) (local $n i32)
    (local.set $p (call $num (i64.extend_i32_s (local.get $host)) (i32.const 1029)))
    (local.set $p (call $num (i64.extend_i32_s (local.get $port)) (local.get $p)))
    (local.set $p (call $num (local.get $big) (local.get $p)))
    (local.set $p
      (call $num (i64.trunc_f32_s (f32.mul (local.get $ratio) (f32.const 1000))) (local.get $p)))
    (local.set $p
      (call $num (i64.trunc_f64_s (f64.mul (local.get $x) (f64.const 1000))) (local.get $p)))
    (local.set $p (call $num (i64.extend_i32_s (local.get $buffer)) (local.get $p)))
    (drop (call $log (i32.const 2) (i32.const 1024)
      (i32.sub (i32.sub (local.get $p) (i32.const 1)) (i32.const 1024))))
    (loop $forever
      (local.set $n (call $recv (i32.const 0) (i32.const 2054) (i32.const 4096) (i32.const -1)))
      (if (i32.ge_s (local.get $n) (i32.const 0))
        (then
          (drop (call $log (i32.const 2) (i32.const 2048) (i32.add (local.get $n) (i32.const 6))))))
      (br $forever))))

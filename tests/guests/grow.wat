(module
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "growing")
  (func (export "run")
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 7)))
    ;; memory.grow returns -1 at the cap; a C guest's malloc would then fail
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))

"""The main process: fork, reap, signals, systemd, and the control commands.

Runs in: main.

- ``loop``       ``MainProcess``: the selectors loop, signals as named steps.
- ``pool``       the workers as supervised children: fork, roll, resize.
- ``residents``  resident components and the node-wide name registry.
- ``compile``    the compile child: AOT images off the loop.
- ``queries``    questions asked of workers, answered by channel frames.
- ``commands``   one handler per ``rusmctl`` command (declared in ``control.protocol``).
- ``listeners``  the serve sockets, bound here and inherited by workers.
- ``systemd``    sd_notify, the watchdog and socket activation.
"""

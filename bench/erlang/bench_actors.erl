%% bench_actors: the Erlang/OTP side of `python -m bench actors`.
%%
%% Runs in: an Erlang VM started by bench/actors_erlang.py, as
%%
%%     erl +S 1 -noshell -pa DIR -run bench_actors main SECTION COUNT TRIALS
%%
%% (`+S 2' for the figures across schedulers). Each section measures what
%% the rusm figure of the same name measures, runs one warm-up trial that
%% is discarded, then TRIALS trials of a fixed COUNT, and prints one JSON
%% line: {"section": ..., "schedulers": ..., "placement": ..., "trials":
%% [{...}, ...]}. A watchdog halts the VM with an "error" line if a
%% section outlives ?LIMIT_MS, so a run always ends by itself.
%%
%% Sections (COUNT is what each counts):
%%
%%   spawn N      spawn_monitor N processes that return at once, wait for
%%                all N 'DOWN's: spawns per second (rusm: host.spawn of an
%%                empty `run', until every process has exited).
%%   pingpong N   N round trips: send `p', wait for `p' back; each timed
%%                on the monotonic clock: total, p50, p90, p99, max (rusm:
%%                rusm.send / rusm.recv between two guest processes).
%%   calls N      N gen_server:call round trips to bench_echo, each timed
%%                (rusm: rusm.call answered by rusm.reply).
%%   flood N      N one-way messages with at most 4,000 unacknowledged, an
%%                ack every 500, until all are acknowledged: the flow
%%                control of the rusm guest, whose mailboxes are bounded.
%%   restarts MS  restarts per second, over MS milliseconds, of a child that
%%                exits at once under bench_sup (one_for_one, permanent,
%%                intensity 1,000,000 in 1 s).
%%   idle N       N processes parked in `receive': memory per process
%%                (erlang:memory(processes), process_info, the OS's RSS and
%%                map count) and the time to kill them all and see them
%%                gone. One trial, no warm-up (it measures a cold start).
%%
%% Placement: with one scheduler both processes share it. With two, the
%% driver is spawned with {scheduler, 1} and its peer with {scheduler, 2}
%% (an undocumented spawn_opt option of ERTS that binds a process to that
%% scheduler's run queue), so every message crosses schedulers as a rusm
%% message across workers crosses processes.
-module(bench_actors).
-export([main/1]).

%% The flow control of bench/guests/actors.c's `flood'.
-define(WINDOW, 4000).
-define(ACK_EVERY, 500).
%% A section that runs longer than this is stuck: halt rather than hang
%% the benchmark that waits for the line.
-define(LIMIT_MS, 120000).

main([Section, CountText, TrialsText]) ->
    Watchdog = spawn(fun() -> watchdog(Section) end),
    Count = list_to_integer(CountText),
    Trials = list_to_integer(TrialsText),
    Result =
        try
            run(list_to_atom(Section), Count, Trials)
        catch
            Class:Reason:Stack ->
                [{error, io_lib:format("~p:~p ~p", [Class, Reason, Stack])}]
        end,
    exit(Watchdog, kill),
    Header = [
        {section, Section},
        {schedulers, erlang:system_info(schedulers_online)},
        {otp, erlang:system_info(otp_release)},
        {placement, placement()}
    ],
    io:put_chars([object(Header ++ Result), $\n]),
    halt(0).

watchdog(Section) ->
    timer:sleep(?LIMIT_MS),
    io:put_chars([object([{section, Section}, {error, "timed out"}]), $\n]),
    halt(3).

run(idle, Count, _Trials) ->
    [{trials, [idle(Count)]}];
run(Section, Count, Trials) ->
    Trial = trial(Section),
    _ = Trial(Count),
    [{trials, [Trial(Count) || _ <- lists:seq(1, Trials)]}].

trial(spawn) -> fun spawn_trial/1;
trial(pingpong) -> fun pingpong_trial/1;
trial(calls) -> fun calls_trial/1;
trial(flood) -> fun flood_trial/1;
trial(restarts) -> fun restarts_trial/1.

placement() ->
    case erlang:system_info(schedulers_online) of
        1 -> "one scheduler";
        _ -> "driver bound to scheduler 1, peer to scheduler 2"
    end.

%% spawn_opt options that put a process of role Role where placement() says.
where(Role) ->
    case {erlang:system_info(schedulers_online), Role} of
        {1, _} -> [];
        {_, driver} -> [{scheduler, 1}];
        {_, peer} -> [{scheduler, 2}]
    end.

%% Run Fun in a fresh driver process placed as a driver, and return its value.
in_driver(Fun) ->
    Parent = self(),
    {Pid, Ref} = spawn_opt(fun() -> Parent ! {self(), Fun()} end, [monitor | where(driver)]),
    receive
        {Pid, Value} ->
            erlang:demonitor(Ref, [flush]),
            Value;
        {'DOWN', Ref, process, Pid, Reason} ->
            error({driver_died, Reason})
    end.

now_ns() -> erlang:monotonic_time(nanosecond).

%% ── spawn ───────────────────────────────────────────────────────────────

spawn_trial(Count) ->
    in_driver(fun() ->
        Start = now_ns(),
        spawn_empty(Count),
        await_down(Count),
        Elapsed = now_ns() - Start,
        [{n, Count}, {total_ns, Elapsed}, {per_s, Count * 1.0e9 / Elapsed}]
    end).

spawn_empty(0) ->
    ok;
spawn_empty(Left) ->
    spawn_monitor(fun() -> ok end),
    spawn_empty(Left - 1).

await_down(0) ->
    ok;
await_down(Left) ->
    receive
        {'DOWN', _, process, _, _} -> await_down(Left - 1)
    end.

%% ── round trips ─────────────────────────────────────────────────────────

pingpong_trial(Count) ->
    Echo = spawn_opt(fun echo/0, where(peer)),
    Times = in_driver(fun() -> pingpong(Echo, Count, []) end),
    exit(Echo, kill),
    distribution(Times).

echo() ->
    receive
        {From, p} ->
            From ! p,
            echo()
    end.

pingpong(_Echo, 0, Times) ->
    Times;
pingpong(Echo, Left, Times) ->
    Start = now_ns(),
    Echo ! {self(), p},
    receive
        p -> ok
    end,
    pingpong(Echo, Left - 1, [now_ns() - Start | Times]).

calls_trial(Count) ->
    {ok, Server} = gen_server:start(bench_echo, [], [{spawn_opt, where(peer)}]),
    Times = in_driver(fun() -> calls(Server, Count, []) end),
    gen_server:stop(Server),
    distribution(Times).

calls(_Server, 0, Times) ->
    Times;
calls(Server, Left, Times) ->
    Start = now_ns(),
    c = gen_server:call(Server, c, infinity),
    calls(Server, Left - 1, [now_ns() - Start | Times]).

%% Total, p50, p90, p99 and max of a list of ns.
distribution(Times) ->
    Sorted = list_to_tuple(lists:sort(Times)),
    N = tuple_size(Sorted),
    At = fun(Fraction) -> element(min(N, 1 + trunc(Fraction * N)), Sorted) end,
    [
        {n, N},
        {total_ns, lists:sum(Times)},
        {p50_ns, At(0.5)},
        {p90_ns, At(0.9)},
        {p99_ns, At(0.99)},
        {max_ns, element(N, Sorted)}
    ].

%% ── one-way messages ────────────────────────────────────────────────────

flood_trial(Count) ->
    Sink = spawn_opt(fun() -> sink(0) end, where(peer)),
    Elapsed = in_driver(fun() ->
        Start = now_ns(),
        flood(Sink, Count, 0, 0),
        now_ns() - Start
    end),
    exit(Sink, kill),
    [{n, Count}, {total_ns, Elapsed}, {per_s, Count * 1.0e9 / Elapsed}].

sink(Counted) ->
    receive
        {From, f} ->
            Next = Counted + 1,
            case Next rem ?ACK_EVERY of
                0 -> From ! a;
                _ -> ok
            end,
            sink(Next)
    end.

%% Send Count messages, at most ?WINDOW unacknowledged, then wait for the
%% acks of every whole ?ACK_EVERY, as the guest does.
flood(Sink, Count, Sent, Acked) when Sent < Count, Sent - Acked >= ?WINDOW ->
    receive
        a -> flood(Sink, Count, Sent, Acked + ?ACK_EVERY)
    end;
flood(Sink, Count, Sent, Acked) when Sent < Count ->
    Sink ! {self(), f},
    flood(Sink, Count, Sent + 1, Acked);
flood(Sink, Count, Sent, Acked) when Acked < Count - Count rem ?ACK_EVERY ->
    receive
        a -> flood(Sink, Count, Sent, Acked + ?ACK_EVERY)
    end;
flood(_Sink, _Count, _Sent, _Acked) ->
    ok.

%% ── restarts under a supervisor ─────────────────────────────────────────

restarts_trial(WindowMs) ->
    %% A crashing child makes a supervisor report per restart; without a
    %% handler the report is still built and dispatched, as rusm still
    %% makes its exit log record, but nothing is printed.
    _ = logger:remove_handler(default),
    Counter = counters:new(1, []),
    {ok, Sup} = supervisor:start_link(bench_sup, Counter),
    unlink(Sup),
    Before = counters:get(Counter, 1),
    Start = now_ns(),
    timer:sleep(WindowMs),
    Started = counters:get(Counter, 1) - Before,
    Elapsed = now_ns() - Start,
    exit(Sup, kill),
    [{n, Started}, {total_ns, Elapsed}, {per_s, Started * 1.0e9 / Elapsed}].

%% ── idle processes ──────────────────────────────────────────────────────

idle(Count) ->
    Processes = erlang:memory(processes),
    Rss = rss_bytes(),
    Maps = map_count(),
    ProcessCount = erlang:system_info(process_count),
    Start = now_ns(),
    Pids = [spawn(fun park/0) || _ <- lists:seq(1, Count)],
    SpawnNs = now_ns() - Start,
    {memory, OneBytes} = erlang:process_info(hd(Pids), memory),
    After = [
        {processes_bytes, erlang:memory(processes) - Processes},
        {rss_bytes, rss_bytes() - Rss},
        {maps, map_count() - Maps},
        {process_info_bytes, OneBytes}
    ],
    Stop = now_ns(),
    lists:foreach(fun(Pid) -> exit(Pid, kill) end, Pids),
    await_count(ProcessCount),
    StopNs = now_ns() - Stop,
    [{n, Count}, {spawn_ns, SpawnNs}, {stop_ns, StopNs} | After].

park() ->
    receive
        stop -> ok
    end.

%% Wait until the VM holds no more than Count processes again.
await_count(Count) ->
    case erlang:system_info(process_count) =< Count of
        true ->
            ok;
        false ->
            timer:sleep(1),
            await_count(Count)
    end.

rss_bytes() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    [_, After] = binary:split(Status, <<"VmRSS:">>),
    [Kib | _] = string:lexemes(binary_to_list(After), " \t\n"),
    list_to_integer(Kib) * 1024.

map_count() ->
    {ok, Device} = file:open("/proc/self/maps", [read, raw, read_ahead]),
    Lines = count_lines(Device, 0),
    ok = file:close(Device),
    Lines.

count_lines(Device, Count) ->
    case file:read_line(Device) of
        {ok, _} -> count_lines(Device, Count + 1);
        eof -> Count
    end.

%% ── JSON, for the flat objects above ───────────────────────────────────

object(Pairs) ->
    ["{", lists:join(", ", [[quoted(atom_to_list(K)), ": ", value(V)] || {K, V} <- Pairs]), "}"].

value(V) when is_integer(V) -> integer_to_list(V);
value(V) when is_float(V) -> float_to_list(V, [{decimals, 3}]);
value([{_, _} | _] = Pairs) -> object(Pairs);
value([[{_, _} | _] | _] = Objects) -> ["[", lists:join(", ", [object(O) || O <- Objects]), "]"];
value(V) -> quoted(lists:flatten(V)).

quoted(Text) ->
    [$", [escape(C) || C <- Text], $"].

escape($") -> "\\\"";
escape($\\) -> "\\\\";
escape(C) when C < 32 -> io_lib:format("\\u~4.16.0b", [C]);
escape(C) -> C.

%% bench_sup: the supervisor of the restart benchmark of bench_actors.
%%
%% Runs in: an Erlang VM started by bench/actors_erlang.py.
%%
%% one_for_one, one permanent child that exits abnormally as soon as it
%% starts, and an intensity it never reaches (1,000,000 restarts in 1 s):
%% the same tree the rusm figure's guest asks rusm.supervise for. The child
%% bumps a counter when it starts, which the benchmark reads.
-module(bench_sup).
-behaviour(supervisor).
-export([init/1, start_crasher/1]).

init(Counter) ->
    Flags = #{strategy => one_for_one, intensity => 1000000, period => 1},
    Child = #{
        id => crasher,
        start => {?MODULE, start_crasher, [Counter]},
        restart => permanent,
        shutdown => brutal_kill
    },
    {ok, {Flags, [Child]}}.

%% A plain linked process, not proc_lib: its exit makes one supervisor
%% report and no crash report, as a rusm child's exit makes one log line.
start_crasher(Counter) ->
    Pid = spawn_link(fun() ->
        counters:add(Counter, 1, 1),
        exit(crashed)
    end),
    {ok, Pid}.

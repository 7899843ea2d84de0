%% bench_echo: the gen_server the call benchmark of bench_actors calls.
%%
%% Runs in: an Erlang VM started by bench/actors_erlang.py.
%%
%% It answers every call with the atom `c', as the guest bench/guests/actors.c
%% answers a rusm.call with "C".
-module(bench_echo).
-behaviour(gen_server).
-export([init/1, handle_call/3, handle_cast/2]).

init([]) -> {ok, nostate}.

handle_call(_Request, _From, State) -> {reply, c, State}.

handle_cast(_Request, State) -> {noreply, State}.

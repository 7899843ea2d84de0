"""Components as a worker runs them: compiled code loaded and linked, WASI for instances.

Runs in: worker, on its loop thread (``ComponentLoader.load``) and on
the thread that makes an instance (``set_wasi``).

The main process compiles every component once (``compiler``) and
sends each worker the images (``ComponentImage``). Loading one checks
its digest again (the file may have changed on disk since), deserializes
it into the processes' engine, checks its imports against its profile
(``linking``) and prepares its instantiation; a module that may serve
on a fiber gets the extra instantiation that needs, and one that may
serve inline gets its instantiation in the inline pool's engine
(``load_inline``, a second step: that engine is sized from what the
first found). A
component that cannot load keeps its error: spawning it fails with it.
"""

from __future__ import annotations

from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from rusmd.channel import ComponentImage
from rusmd.config.environment import Environment
from rusmd.config.model import Capability, Manifest
from rusmd.log import Logger
from rusmd.wasm.cache import verify
from rusmd.wasm.linking import ENTRY_EXPORTS, LinkError, LinkerSet, check_module, granted
from rusmd.wasm.process import LoadedComponent
from rusmd.wasm.traps import first_line


class ComponentLoader:
    """Loads the compile step's images into one worker's engines.

    Args:
        manifest: The resolved manifest (the components to load).
        environment: Env values for granted keys.
        log: The worker's logger.
        engine: The processes' engine.
        linkers: Its linkers (with the async ones a fiber needs).
    """

    def __init__(
        self,
        manifest: Manifest,
        environment: Environment,
        log: Logger,
        *,
        engine: wasmtime.Engine,
        linkers: LinkerSet,
    ) -> None:
        self.manifest = manifest
        self.environment = environment
        self.log = log
        self.engine = engine
        self.linkers = linkers

    def load(self, images: list[ComponentImage]) -> dict[str, LoadedComponent]:
        """The manifest's components from the compile step's images, by name."""
        fresh: dict[str, LoadedComponent] = {}
        for image in images:
            component = self.manifest.components.get(image.name)
            if component is None:
                continue
            fresh[image.name] = self._load_one(component.name, component.profile, image)
        return fresh

    def load_module(self, name: str, profile: Capability, image: ComponentImage) -> LoadedComponent:
        """A module launched ad hoc (``rusmctl spawn --module``), under ``profile``.

        Its imports are checked against the grants exactly as a manifest
        component's are; its exports ``run`` and ``_start`` are not entries
        (it names its entrypoint). The process keeps the record, nothing
        else does.
        """
        return self._load_one(name, profile, image, entry_exports=())

    def _load_one(
        self,
        name: str,
        profile: Capability,
        image: ComponentImage,
        entry_exports: tuple[str, ...] = ENTRY_EXPORTS,
    ) -> LoadedComponent:
        loaded = LoadedComponent(
            name=name,
            capability=profile,
            grants=granted(profile),
            env=self.environment.resolve(profile.env),
        )
        if image.error:
            loaded.error = image.error
            return loaded
        if not verify(image.cwasm, image.digest):
            loaded.error = (
                f"component {name}: compiled code {image.cwasm} changed on disk "
                "since it was checked; run `rusmctl reload` to rebuild it"
            )
            self.log.error(loaded.error)
            return loaded
        try:
            module = wasmtime.Module.deserialize_file(self.engine, image.cwasm)
            loaded.shape = check_module(name, module, loaded.grants, entry_exports)
            linker = self.linkers.linker(loaded.grants)
            loaded.pre = linker.instantiate_pre(module)
            loaded.module = module
            loaded.inline = loaded.shape.inline
            if loaded.shape.fiber:
                fiber_linker = self.linkers.linker(loaded.grants, fiber=True)
                loaded.fiber_pre = fiber_linker.instantiate_pre(module)
                loaded.fiber_pre_ptr = loaded.fiber_pre.ptr()
        except LinkError as exc:
            loaded.error = str(exc)
        except wasmtime.WasmtimeError as exc:
            loaded.error = f"component {name}: {first_line(str(exc))}"
        return loaded

    def load_inline(
        self,
        loaded: dict[str, LoadedComponent],
        images: list[ComponentImage],
        engine: wasmtime.Engine,
        linkers: LinkerSet,
    ) -> None:
        """Prepare the inline instantiation of each loaded inline component.

        A second step after ``load``: the inline pool's engine is sized from
        what ``load`` found (``engine.inline_keep_resident``).
        """
        for image in images:
            component = loaded.get(image.name)
            if component is None or not component.inline or component.error:
                continue
            try:
                module = wasmtime.Module.deserialize_file(engine, image.cwasm)
                component.inline_pre = linkers.linker(component.grants).instantiate_pre(module)
                component.inline_pre_ptr = component.inline_pre.ptr()
            except wasmtime.WasmtimeError as exc:
                component.inline = False
                component.error = f"component {component.name}: {first_line(str(exc))}"


def set_wasi(context: Any, component: LoadedComponent) -> str:
    """Give a new store of ``component`` its WASI context; why not, or "".

    argv is the component's name, env its granted keys; stdout and stderr
    are the worker's with ``allow-stdio``; each preopen is opened now.
    """
    config = wasmtime.WasiConfig()
    config.argv = [component.name]
    if component.env:
        config.env = component.env
    if component.capability.allow_stdio:
        config.inherit_stdout()
        config.inherit_stderr()
    for preopen in component.capability.preopen:
        try:
            config.preopen_dir(preopen.host, preopen.guest, not preopen.read_only)
        except wasmtime.WasmtimeError as exc:
            return f"preopen {preopen.guest}: cannot open {preopen.host} ({exc})"
    ffi.wasmtime_context_set_wasi(context, config._consume())
    return ""

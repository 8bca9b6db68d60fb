"""A flax module's initial variables from one jitted program compiled without XLA's backend
optimisations.

Initialisation runs once per model, so how fast its program runs does not matter; compiling it
does. Drawing every parameter is most of a small model's start-up on CPU: module.init, eager or
jitted at full optimisation, takes about 20 s for the cross-attention U-Net of the latent demo,
this about 10 s (4 s instead of 12 s for the digits NCSN++). The values are module.init's, up
to rounding in the last bit of some float32 parameters.
"""
import functools

import jax

_INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}

# The compiled initialisations of this process, by the text of their lowered program and the
# shapes of their inputs (jit drops inputs the parameters do not depend on from the program, so
# a fully convolutional model's text is the same at every image size): a model built again (a
# run trained, then loaded for evaluation) is not compiled again.
_compiled = {}


def init_variables(module, rngs, *inputs, **options) -> dict:
  """module.init(rngs, *inputs, **options) as a dict: rngs a key or {stream: key}, inputs the
  example arrays (only their shapes and dtypes matter to the result), options the other keyword
  arguments of the module's __call__ (e.g. train=False, an example condition). Under a
  transformation (jax.eval_shape, jit) it is module.init, traced with the rest."""
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((rngs, inputs, options))):
    return dict(module.init(rngs, *inputs, **options))
  lowered = jax.jit(functools.partial(module.init, **options)).lower(rngs, *inputs)
  program = (lowered.as_text(),
             tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves((rngs, inputs))))
  if program not in _compiled:
    _compiled[program] = lowered.compile(compiler_options=_INIT_COMPILER_OPTIONS)
  return dict(_compiled[program](rngs, *inputs))

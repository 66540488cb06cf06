"""Object assets and the differentiable scene renderer.

nerfstudio 1.1.5 still uses APIs that torch deprecates with FutureWarnings at import
(``torch.cuda.amp.custom_fwd`` on its activations, ``torch.jit.script`` on its camera
utilities): every nerfsim command would print warnings about code that is not ours. They are
ignored here, before any module of this package imports nerfstudio: warnings raised from
nerfstudio's modules, and torch's ``torch.jit.script`` deprecation (raised from torch's own
module, on nerfstudio's behalf; nerfsim does not script anything).
"""

import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module=r"nerfstudio(\.|$)")
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

"""cai: Constitutional AI training as Kubernetes resources and as a local pipeline.

The package is split so the operator image stays slim: `api`, `pipeline`, `store`, `controller`,
`local` and `cli` import no ML libraries; `stages` and `models` import torch/transformers lazily.
"""

__version__ = "0.1.0"

"""Streaming accumulators: feed batches with ``update``, then ``compute``; every accumulator merges,
checkpoints (``state_dict``, loadable with ``torch.load(weights_only=True)``), moves between devices and
all-reduces over torch.distributed.

- :class:`CrossMoments`: exact cross moments of any number of layers, serving every moment-based measure.
- :class:`LinearCKA`: exact streaming linear CKA of one pair (the state of :class:`CrossMoments`).
- :class:`MinibatchCKA`, :class:`MinibatchCKAMatrix`: minibatch CKA of Nguyen et al. (2021), any kernel.
"""

from ._cka import LinearCKA, MinibatchCKA, MinibatchCKAMatrix
from ._moments import CrossMoments
from ._protocol import Accumulator, Pending

__all__ = ["Accumulator", "CrossMoments", "LinearCKA", "MinibatchCKA", "MinibatchCKAMatrix", "Pending"]

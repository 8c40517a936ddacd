"""Data structures with one convention each: boxes, batches, temporal state."""

from bevforge.structures.batch import Batch
from bevforge.structures.boxes import BOX_CONVENTION, BOX_DIM, CODE_DIM
from bevforge.structures.temporal import TemporalState

__all__ = ["BOX_CONVENTION", "BOX_DIM", "CODE_DIM", "Batch", "TemporalState"]

"""Simulated annotator populations with known types (DESIGN §8)."""

from pluralign.simulate.population import (
    FLAVOURS,
    MISSPECIFY,
    PERSONAS,
    Population,
    SimulationConfig,
    simulate,
)
from pluralign.simulate.store import write_population

__all__ = ["FLAVOURS", "MISSPECIFY", "PERSONAS", "Population", "SimulationConfig", "simulate",
           "write_population"]

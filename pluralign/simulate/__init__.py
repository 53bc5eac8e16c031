"""Simulated annotator populations with known types (DESIGN §8)."""

from pluralign.simulate.population import (
    FLAVOURS,
    MISSPECIFY,
    PERSONAS,
    SimulationConfig,
    simulate,
)
from pluralign.simulate.store import Population, write_population

__all__ = ["FLAVOURS", "MISSPECIFY", "PERSONAS", "Population", "SimulationConfig", "simulate",
           "write_population"]

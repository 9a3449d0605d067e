"""The reference world: fictitious people, their portraits and facts, and models that memorised them."""

from unlearning.world.config import WORLD_PRESETS, ModelSpec, WorldConfig
from unlearning.world.people import Fact, Person, QAPair, generate_people
from unlearning.world.store import World

__all__ = ["WORLD_PRESETS", "Fact", "ModelSpec", "Person", "QAPair", "World", "WorldConfig", "generate_people"]

"""Suite-wide settings."""

from hypothesis import settings

# The suite runs on 2 shared cores with pytest-xdist: a per-example deadline
# measures the machine's load, not the code. Properties are still checked.
settings.register_profile("stemd", deadline=None)
settings.load_profile("stemd")

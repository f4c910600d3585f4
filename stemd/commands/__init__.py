"""stemctl's commands, one module per family, each imported only when one of
its commands runs. The registry that names them is :data:`stemd.ctl.COMMANDS`."""

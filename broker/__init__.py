"""Everything that runs on the reachable host: the embedded broker and the X bridge."""

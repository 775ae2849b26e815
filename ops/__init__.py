"""Operations: the `quarry` CLI, the `quarry up` supervisor, deployment configs."""

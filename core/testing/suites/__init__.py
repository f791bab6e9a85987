"""One module per component kind (`checks(target) -> list[Check]`), plus `common` for all kinds."""

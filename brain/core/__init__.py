"""The brain core: handle(event) -> commands, the same in every shell."""

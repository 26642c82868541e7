from .principal import Principal, TokenKind

__all__ = ["Principal", "TokenKind"]

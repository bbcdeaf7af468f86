from tests.support.provider_cases import http_peer, peer

__all__ = ["http_peer", "peer"]

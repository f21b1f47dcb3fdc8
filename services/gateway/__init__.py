"""The REST edge: OpenAI-compatible speech paid from prepaid credits, over the gRPC services."""

"""The batch endpoints OpenBatch runs and what each one's request body must hold."""

from enum import StrEnum


class Endpoint(StrEnum):
    """Endpoints a batch may target (contract §3.1, the subset self-hosted servers serve)."""

    CHAT_COMPLETIONS = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"
    RESPONSES = "/v1/responses"


# Body fields each endpoint requires besides `model`, with OpenAI's message wording.
REQUIRED_BODY_FIELDS: dict[Endpoint, tuple[tuple[str, str], ...]] = {
    Endpoint.CHAT_COMPLETIONS: (("messages", "Messages parameter is required."),),
    Endpoint.COMPLETIONS: (("prompt", "Prompt parameter is required."),),
    Endpoint.EMBEDDINGS: (("input", "Input parameter is required."),),
    Endpoint.RESPONSES: (("input", "Input parameter is required."),),
}

# Human names used in OpenAI's `streaming_unsupported` message.
ENDPOINT_TITLES: dict[Endpoint, str] = {
    Endpoint.CHAT_COMPLETIONS: "Chat Completions",
    Endpoint.COMPLETIONS: "Completions",
    Endpoint.EMBEDDINGS: "Embeddings",
    Endpoint.RESPONSES: "Responses",
}

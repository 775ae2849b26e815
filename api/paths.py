"""Every URL path of the API, in one place."""

HEALTHZ = "/healthz"
READYZ = "/readyz"
DOCS = "/docs"

V1 = "/v1"
ME = f"{V1}/me"
ADMIN = f"{V1}/admin"
ADMIN_TENANTS = f"{ADMIN}/tenants"
ADMIN_USERS = f"{ADMIN}/users"
ADMIN_KEYS = f"{ADMIN}/keys"
ADMIN_KEY = f"{ADMIN_KEYS}/{{key_id:uuid}}"

# Reachable without an API key.
PUBLIC = [HEALTHZ, READYZ, DOCS]

COLLECTIONS = f"{V1}/collections"
COLLECTION = f"{COLLECTIONS}/{{collection_id:uuid}}"
COLLECTION_DOCUMENTS = f"{COLLECTION}/documents"
DOCUMENTS = f"{V1}/documents"
DOCUMENT = f"{DOCUMENTS}/{{document_id:uuid}}"
DOCUMENT_EVENTS = f"{DOCUMENT}/events"
DOCUMENTS_EVENTS = f"{DOCUMENTS}/events"
SEARCH = f"{V1}/search"

# Chat (conversations, one-shot chat) and the OpenAI-compatible facade.
CONVERSATIONS = f"{V1}/conversations"
CONVERSATION = f"{CONVERSATIONS}/{{conversation_id:uuid}}"
CONVERSATION_MESSAGES = f"{CONVERSATION}/messages"
CHAT = f"{V1}/chat"
CHAT_COMPLETIONS = f"{V1}/chat/completions"
MODELS = f"{V1}/models"

# Data sources and their sync runs (Dagster executes them).
SOURCES = f"{V1}/sources"
SOURCE = f"{SOURCES}/{{source_id:uuid}}"
SOURCE_ENABLE = f"{SOURCE}/enable"
SOURCE_DISABLE = f"{SOURCE}/disable"
SOURCE_SYNC = f"{SOURCE}/sync"
SOURCE_RUNS = f"{SOURCE}/runs"
SOURCE_RUN = f"{SOURCE_RUNS}/{{run_id:uuid}}"

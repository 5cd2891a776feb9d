"""Column names of the tables in `appwrite.json`, shared by both stores so that they cannot
disagree on the schema."""

from __future__ import annotations

from collections.abc import Mapping

from .tokens import TokenUsage

# The column of the `subscriptions` table behind each AccountPatch field (schema: appwrite.json).
ACCOUNT_PATCH_COLUMNS: Mapping[str, str] = {
    "plan": "plan",
    "status": "status",
    "max_tokens_per_month": "maxTokensPerMonth",
    "addon_tokens": "addonTokens",
    "stripe_customer_id": "stripeCustomerId",
    "stripe_subscription_id": "stripeSubscriptionId",
    "stripe_updated_at": "stripeUpdatedAt",
    "period_start": "periodStart",
    "period_end": "periodEnd",
    "storage_bytes_limit": "storageBytesLimit",
    "bank_connections_limit": "bankConnectionsLimit",
}


def usage_columns(usage: TokenUsage) -> dict[str, int]:
    """The `usage_events` columns of a usage, its total included."""
    return {
        "inputTokens": usage.input_tokens,
        "cacheCreationInputTokens": usage.cache_creation_input_tokens,
        "cacheCreation1hTokens": usage.cache_creation_1h_tokens,
        "cacheReadInputTokens": usage.cache_read_input_tokens,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.total_tokens,
        "steps": usage.steps,
    }

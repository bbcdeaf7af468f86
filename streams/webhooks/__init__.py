"""Status webhooks: subscriptions, what each one receives, signing, sending and retries."""

"""Test suite of mailtrap-webhook-operator."""

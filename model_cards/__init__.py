"""Model-card templates (Jinja, rendered by ``huggingface_hub.ModelCard.from_template``), installed as
``lion_hf.model_cards``; ``lion_hf.cards`` fills them."""

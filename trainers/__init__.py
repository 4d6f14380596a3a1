"""Lightning + timm training programs that the agentexp loop launches (a Hydra app of their own)."""

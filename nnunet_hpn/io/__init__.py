"""Reading images and labels, image geometry, listing cases, publishing outputs atomically."""

"""HTTP serving of recommendations: the FastAPI read API over Redis and its inspection page.

``serving.app.create_app(settings)`` builds the app; ``crossrec serve`` runs it under uvicorn.
"""

"""bevforge.models"""

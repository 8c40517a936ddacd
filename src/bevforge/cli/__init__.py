"""bevforge.cli"""

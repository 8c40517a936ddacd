"""bevforge.losses"""

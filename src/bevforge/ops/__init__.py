"""bevforge.ops"""

"""bevforge.ops.msda"""

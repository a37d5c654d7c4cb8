"""Exports of stored data for analysts and other tools."""

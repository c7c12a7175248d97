import legator_probe.protocol as protocol


def test_every_public_name_is_importable_from_the_package() -> None:
    for name in protocol.__all__:
        assert getattr(protocol, name) is not None, name


def test_public_names_are_listed_once() -> None:
    assert len(protocol.__all__) == len(set(protocol.__all__))


def test_package_exports_the_core_api() -> None:
    expected = {"ProbeProtocol", "Side", "State", "parse_message", "dump_message", "Verifier", "sign_envelope"}
    assert expected <= set(protocol.__all__)

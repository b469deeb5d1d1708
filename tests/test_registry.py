import pytest

import kvision
from kvision import registry
from kvision.models import get_info, list_models

REQUIRED = [
    "lenet5", "alexnet", "zfnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn",
    "vgg16_bn", "googlenet", "inception_v3", "inception_v4", "inception_resnet_v2",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet50_v2",
    "resnext50_32x4d", "resnext101_32x8d", "xception", "densenet121", "densenet169",
    "densenet201", "se_resnet50", "se_resnext50_32x4d", "mobilenet_v1", "mobilenet_v2",
    "mobilenet_v3_small", "mobilenet_v3_large", "squeezenet1_0", "squeezenet1_1",
    "shufflenet_v2_x1_0", *[f"efficientnet_b{i}" for i in range(8)], "darknet53",
]


def test_every_network_of_the_zoo_is_registered():
    missing = sorted(set(REQUIRED) - set(list_models()))
    assert not missing, f"not registered: {missing}"


def test_names_are_lower_case_and_builders_public():
    for name in list_models():
        assert name == name.lower()
        builder = get_info(name).builder
        assert getattr(kvision.models, builder.__name__) is builder
        assert builder.__name__[0].isupper()


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError, match="resnet50") as error:
        kvision.create("resnet05")
    assert "Unknown model 'resnet05'" in str(error.value)
    with pytest.raises(ValueError, match="Unknown model"):
        get_info("no-such-net")


@pytest.mark.parametrize("typed, suggested", [
    ("resnet5", ["resnet50", "resnet50_v2"]),  # unfinished: its completions first
    ("mobilnet_v2", ["mobilenet_v2", "mobilenet_v1"]),  # a missing letter
    ("MobileNetV2", ["mobilenet_v2", "mobilenet_v1"]),  # the paper's spelling
    ("yolo3", ["yolov3"]),
])
def test_typos_suggest_the_names_meant(typed, suggested):
    with pytest.raises(ValueError) as error:
        get_info(typed)
    close = str(error.value).split("Closest matches: ")[1].split(".")[0].split(", ")
    assert close[:len(suggested)] == suggested
    assert "efficientnet_b7" not in close


@pytest.mark.parametrize("typed", ["nonexistent_net", "banana", "cascade_rcnn"])
def test_made_up_names_suggest_nothing(typed):
    with pytest.raises(ValueError, match=f"Unknown model '{typed}'") as error:
        get_info(typed)
    assert "Closest matches" not in str(error.value)


def test_list_filters():
    assert list_models(pattern="vgg1?") == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert set(list_models(task="classification")) <= set(list_models())
    assert "lenet5" in list_models(task="classification")
    assert list_models(family="vgg")[0] == "vgg11"
    with pytest.raises(ValueError, match="Unknown task"):
        list_models(task="poetry")


def test_register_refuses_duplicates_and_upper_case():
    with pytest.raises(ValueError, match="already registered"):
        registry.register("lenet5", task="classification", family="x", year=1, paper="p")(
            lambda: None)
    with pytest.raises(ValueError, match="lower-case"):
        registry.register("LeNet", task="classification", family="x", year=1, paper="p")


def test_create_passes_arguments_to_the_builder():
    model = kvision.create("lenet5", classes=3, name="tiny")
    assert model.name == "tiny" and model.output_shape == (None, 3)

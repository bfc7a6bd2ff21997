"""Language data for ``edgefleet.agents.examples.text``: stopword lists and short reference texts.

The reference texts are small, hand-written paragraphs of everyday prose; their character
trigrams give each language a profile that still works when a sample has no stopwords.
They are data, not code: extend a list or a paragraph to sharpen detection.
"""

from __future__ import annotations

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        """a about above after again against all also am an and any are as at be because been before being
        below between both but by can could did do does doing down during each few for from further had has
        have having he her here hers herself him himself his how i if in into is it its itself just me more
        most my myself no nor not now of off on once only or other our ours out over own same she should so
        some such than that the their theirs them then there these they this those through to too under until
        up very was we were what when where which while who whom why will with would you your yours""".split()
    ),
    "de": frozenset(
        """aber alle allem also am an andere auch auf aus bei bin bis bist da damit dann das dass dein dem den
        denn der des dich die dir doch dort du durch ein eine einem einen einer eines er es etwas euch euer für
        gegen gewesen habe haben hat hatte hier hinter ich ihm ihn ihr ihre im in indem ins ist jede jedem jeden
        jeder jetzt kann kein keine können man mein mich mir mit muss nach nicht nichts noch nun nur ob oder ohne
        sehr sein seine sich sie sind so soll sondern über um und uns unser unter viel vom von vor war waren
        warum was weil welche wenn wer werden wie wieder will wir wird wo zu zum zur zwischen""".split()
    ),
    "fr": frozenset(
        """à au aussi aux avec ce ces cet cette comme dans de des donc du elle elles en est et être eu été était
        il ils je la le les leur leurs lui ma mais me même mes moi mon ne nos notre nous on ont ou où par pas
        plus pour qu que qui sa sans se ses si son sont sur ta te tes toi ton tous tout très tu un une vos
        votre vous y""".split()
    ),
    "es": frozenset(
        """a al algo algunos ante antes como con contra cual cuando de del desde donde durante e el él ella
        ellas ellos en entre era es esa ese eso esta está están este esto estos fue fueron ha han hasta hay la
        las le les lo los más me mi muy nada ni no nos o otra otro para pero poco por porque que qué se sea ser
        si sí sin sobre son su sus también tan te tiene tienen todo todos tu un una uno unos y ya yo""".split()
    ),
    "it": frozenset(
        """a ad al alla alle anche che chi ci come con da dal dalla dei del della delle di dove e è ed era erano
        essere gli ha hanno ho i il in io la le lei lo loro lui ma mi molto ne negli nel nella noi non o per
        perché più poi quale quando quella quello questa questo se si sia siamo sono sta su sua sue suo sul
        sulla tra tu tutti tutto un una uno vi""".split()
    ),
    "pt": frozenset(
        """a ao aos as até com como da das de dela dele do dos e é ela elas ele eles em entre era essa esse esta
        está estão este eu foi foram há isso isto já lhe mais mas me meu minha muito na nas nem no nos não o os
        ou para pela pelo por porque quando que se sem ser seu sua são também te tem têm um uma umas uns
        você""".split()
    ),
    "nl": frozenset(
        """aan al als bij dan dat de der deze die dit doch door dus een en er geen had heb hebben heeft het hier
        hij hoe hun ik in is ja je kan kon maar me met mij mijn na naar niet niets nog nu of om omdat ons onze
        ook op over te tegen toch toen tot u uit van veel voor was wat we wel werd wie wij worden zal ze zei
        zich zij zijn zo zou""".split()
    ),
}

REFERENCE_TEXTS: dict[str, str] = {
    "en": """The weather was cold this morning, so we stayed at home and read the newspaper. Most people
        in the city take the train to work, because the roads are always full of traffic. My brother has
        been working in a small company that builds software for hospitals and schools. We should think
        about the future of our children and the world they will live in. Which book would you recommend
        for a long journey through the mountains? The government announced new rules for the education
        system yesterday, and many teachers were not happy with them.""",
    "de": """Das Wetter war heute Morgen kalt, deshalb sind wir zu Hause geblieben und haben die Zeitung
        gelesen. Die meisten Menschen in der Stadt fahren mit dem Zug zur Arbeit, weil die Straßen immer
        voller Verkehr sind. Mein Bruder arbeitet seit einigen Jahren in einer kleinen Firma, die Software
        für Krankenhäuser und Schulen entwickelt. Wir sollten über die Zukunft unserer Kinder nachdenken und
        über die Welt, in der sie leben werden. Welches Buch würdest du für eine lange Reise durch die Berge
        empfehlen? Die Regierung hat gestern neue Regeln für das Bildungssystem angekündigt.""",
    "fr": """Il faisait froid ce matin, alors nous sommes restés à la maison pour lire le journal. La
        plupart des gens de la ville prennent le train pour aller au travail, parce que les routes sont
        toujours pleines de voitures. Mon frère travaille depuis quelques années dans une petite entreprise
        qui fabrique des logiciels pour les hôpitaux et les écoles. Nous devons penser à l'avenir de nos
        enfants et au monde dans lequel ils vivront. Quel livre me conseillerais-tu pour un long voyage à
        travers les montagnes? Le gouvernement a annoncé hier de nouvelles règles pour l'éducation.""",
    "es": """Hacía frío esta mañana, así que nos quedamos en casa y leímos el periódico. La mayoría de la
        gente de la ciudad toma el tren para ir al trabajo, porque las calles siempre están llenas de
        tráfico. Mi hermano trabaja desde hace unos años en una pequeña empresa que desarrolla programas para
        hospitales y escuelas. Deberíamos pensar en el futuro de nuestros hijos y en el mundo en el que
        vivirán. ¿Qué libro me recomiendas para un viaje largo por las montañas? El gobierno anunció ayer
        nuevas reglas para el sistema educativo, y muchos maestros no estaban contentos con ellas.""",
    "it": """Stamattina faceva freddo, così siamo rimasti a casa e abbiamo letto il giornale. La maggior
        parte delle persone in città prende il treno per andare al lavoro, perché le strade sono sempre
        piene di traffico. Mio fratello lavora da qualche anno in una piccola azienda che sviluppa programmi
        per gli ospedali e le scuole. Dovremmo pensare al futuro dei nostri figli e al mondo in cui
        vivranno. Quale libro mi consiglieresti per un lungo viaggio attraverso le montagne? Il governo ha
        annunciato ieri nuove regole per il sistema scolastico, e molti insegnanti non erano contenti.""",
    "pt": """Estava frio hoje de manhã, então ficamos em casa e lemos o jornal. A maioria das pessoas da
        cidade pega o trem para ir ao trabalho, porque as ruas estão sempre cheias de trânsito. Meu irmão
        trabalha há alguns anos numa pequena empresa que desenvolve programas para hospitais e escolas.
        Devemos pensar no futuro dos nossos filhos e no mundo em que eles vão viver. Que livro você me
        recomendaria para uma longa viagem pelas montanhas? O governo anunciou ontem novas regras para o
        sistema de educação, e muitos professores não ficaram satisfeitos com elas.""",
    "nl": """Het was vanochtend koud, dus zijn we thuis gebleven en hebben we de krant gelezen. De meeste
        mensen in de stad nemen de trein naar hun werk, omdat de wegen altijd vol verkeer staan. Mijn broer
        werkt al een paar jaar bij een klein bedrijf dat software maakt voor ziekenhuizen en scholen. We
        moeten nadenken over de toekomst van onze kinderen en over de wereld waarin zij zullen leven. Welk
        boek zou jij aanraden voor een lange reis door de bergen? De regering heeft gisteren nieuwe regels
        voor het onderwijs aangekondigd, en veel leraren waren daar niet blij mee.""",
}
